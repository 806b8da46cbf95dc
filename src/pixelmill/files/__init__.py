"""Result files: storage backends and signed, expiring URLs."""
