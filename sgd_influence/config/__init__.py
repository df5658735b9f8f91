"""What a run is: the options shared by every command, their validators and the nnabla context
(settings), and the data a settings dict describes, with its injected label noise (noise)."""
