"""What the workers run: the task bodies (``tasks``), the import step of each API profile (``profiles``) and the
modules they use (reading and validating the export, chunking, sending, the list's state, list sync, the report).
Nothing here is imported when the DAG file is parsed (its task functions and ``include.cxone_dag``'s operators
import them when a task runs), and the api-server never imports them."""
