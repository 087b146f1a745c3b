"""What pages and notebooks show: run tables (compare), plotly figures (charts) and the live view of
training (live). Imports anything below it; the pages and the CLI import it."""
