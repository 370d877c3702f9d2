"""Generic analysis over any study: counterfactual pairs, patching, ablation and random controls
(pairs), writing and logging results (outputs), and report pieces (report)."""
