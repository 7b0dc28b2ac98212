"""Storage URIs, the names of files in every folder, and images (PNG, grids, plots)."""
