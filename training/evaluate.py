"""`python -m training.evaluate`: the ranking evaluation (training.eval.ranking) under its documented name."""
from training.eval.ranking import main

if __name__ == "__main__":
    main()
