"""The OpenAI-compatible server (`minillm serve`): see api_server.py for the map."""
