"""Training: evaluation, the online loop and the pipeline that joins the phases."""
