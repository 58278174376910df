from experiments.tangent_composition import main

main()
