"""What a sweep's MLflow runs become: the report (tables, plots, saliency galleries), the Pareto
front, and exported students."""
