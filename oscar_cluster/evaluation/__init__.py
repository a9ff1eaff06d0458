"""Quality evaluation (the eval issue): RULER's synthetic tasks (`ruler`); the `oscar-eval` harness
(needle grid, perplexity, attention error, protocols, reports) is still to come."""
