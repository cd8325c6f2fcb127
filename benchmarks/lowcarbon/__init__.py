"""Method code of the low-carbon CV benchmark (Li et al. 2021): data, models, training and the
four compression families (pruning, quantization, distillation, architecture search)."""
