"""The `metalhorn volume|node|disk` commands: argument parsing, one REST call each through control.client,
and rendering (output.py: tables, json/yaml, progress bars). No logic here that the API does not also have."""
