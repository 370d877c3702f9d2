"""Study 3: hopping too late (Biran et al. 2024): two-hop queries over a fictional knowledge graph
(a model trained from scratch) and over famous real-world entities (pretrained LMs); entity-description
Patchscopes, attention knockout, the sublayer lens and back-patching."""
STUDY = "hopping-too-late"  # the MLflow experiment of every study-3 run
MODEL_NAME = "hopping-too-late-graph-model"  # the registered MLflow model of the from-scratch model
