"""The shared kernel: what every component needs and nothing component-specific."""
