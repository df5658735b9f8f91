"""How accurate the scores are (validate_influence.py): single-instance counterfactuals
(validate), the linear datamodeling score with its noise ceiling (lds), and Hara et al.'s own
Sec. 7.1 protocol against exact leave-one-out on small models (hara71)."""
