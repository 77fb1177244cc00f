"""What the dag-processor parses with the DAG file: its names and settings (``settings``), its operators
(``operators``) and callbacks (``callbacks``). Nothing here imports pandas, pyarrow or pandera, nor the task code
(``include.cxone_import``) before a task or callback runs."""
