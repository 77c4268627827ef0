"""A model's test metrics and report files, the mistakes gallery, and the leaderboard of heads."""
