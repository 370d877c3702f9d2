"""Study 1: propositional logic (Hong et al. 2024): data, its checks, the small model, its training,
the circuit study and the LLM half."""
STUDY = "propositional-logic"  # the MLflow experiment of every study-1 run
MODEL_NAME = "propositional-logic-gpt2"  # the registered MLflow model: a version per trained seed
