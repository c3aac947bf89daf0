"""The command line's subcommands (``keras_lowrank.cli`` parses, these run)."""
