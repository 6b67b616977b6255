"""The fan-out benchmark (bench/run.sh). Not part of the server."""
