"""The analyses behind the notebooks: each module computes the tables and draws the figures of one finding."""
