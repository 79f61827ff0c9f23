"""The benchmark suite: ratios against peers measured in the same run."""
