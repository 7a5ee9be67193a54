"""The embedded demo: datasets and a backbone built from images that ship inside installed packages."""
