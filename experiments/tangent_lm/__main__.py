from experiments.tangent_lm import main

main()
