"""Paper-reproduction experiments at CPU scale (docs/results.md). One module per experiment:
`python -m experiments.<name> [--smoke]`; results land in experiments/results/, plots in docs/img/."""
