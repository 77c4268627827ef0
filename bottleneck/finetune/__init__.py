"""Stage 3: a fitted head transplanted onto the feature network and trained end to end."""
