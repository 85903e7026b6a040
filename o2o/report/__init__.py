"""Reports: tables (and, with issue 5, plots and HTML) of datasets and runs."""
