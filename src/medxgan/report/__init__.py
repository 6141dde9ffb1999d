"""Reports: figures, tables, the ablation, run times and notebooks, read from the files in results/."""
