"""Floor 0: the facts every other layer looks up -- the one exception type (errors), the method
table (methods), every output path and checked reader (layout), the plot style and atomic PNG
save (figures), rank statistics (metrics), progress bars (progress) and the project's Python
(environment). Imports nothing else of the project."""
