"""Datasets: procedural phantoms and the manifest format every step reads."""
