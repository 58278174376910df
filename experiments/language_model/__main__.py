from experiments.language_model import main

main()
