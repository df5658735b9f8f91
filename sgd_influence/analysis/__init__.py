"""Phase 4, from finished output folders only: the summary tables and figures (analyze), the
paper's Table 1 (table1), harmful/helpful image grids (grids) and the cleansed dataset (export)."""
