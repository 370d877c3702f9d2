"""Study 2: chain of thought over fictional ontologies (Dutta et al. 2024): PrOntoQA-style data,
its checks, behaviour and per-subtask head analyses on pretrained LMs."""
STUDY = "ontology-cot"  # the MLflow experiment of every study-2 run
