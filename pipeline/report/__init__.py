"""Result records to tables (CSV, Markdown, LaTeX) and figures."""
