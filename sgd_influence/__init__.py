"""SGD-influence (Hara et al. 2019) and its final-parameters approximation
(Suzuki et al. 2021), in nnabla. See README.md for the math and the layout."""
