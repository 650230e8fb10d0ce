"""Speed, serving and quality-cost benchmarks of rankjax, run from the repository root as
`python -m benchmarks.<name>`; not shipped in the wheel."""
