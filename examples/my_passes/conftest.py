import my_passes.softplus  # noqa: F401  (registers the pass before the .golden files run)
