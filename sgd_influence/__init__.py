"""SGD-influence (Hara et al. 2019) and its final-parameters approximation
(Suzuki et al. 2021), in nnabla. See docs/method.md for the math, README.md for the layout."""
import logging

# nnabla logs every parameter save and its start-up at INFO; keep the console
# for progress bars and results. Set before nnabla is first imported.
logging.getLogger("nnabla").setLevel(logging.WARNING)
