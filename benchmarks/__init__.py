"""The low-carbon computer-vision benchmark that ships with pytest-energy."""
