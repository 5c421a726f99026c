"""Looking at attention: views and statistics, analysis by length, plots."""
