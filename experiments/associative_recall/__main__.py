from experiments.associative_recall import main

main()
