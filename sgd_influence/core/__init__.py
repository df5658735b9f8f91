"""The estimators and the training they differentiate: the network (network, batch_norm), its
graphs (graphs), training that records every step (train, step_record, params), the backward
retrace of SGD-influence (infl), the last-epoch counterfactual retraining (eval) and the Loss
control (controls). Functions take plain arguments; imports only `base`, `datasets`, `models`."""
