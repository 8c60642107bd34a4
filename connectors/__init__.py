"""HTTP clients for the two vendors: Perkville (source) and Perkamo (remote target)."""
