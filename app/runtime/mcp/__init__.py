"""MCP client: the tools of Model Context Protocol servers (stdio and Streamable HTTP), for the chat.

`config` is pure data (the settings' ``mcp_servers`` entries and the ``mcp.json`` shape); `manager`
owns the running servers (started when first needed, stopped with the worker) through the official
``mcp`` SDK; `results` turns a tool's answer into capped text for the model's context; `naming`
maps servers' tools to OpenAI function tools. This module imports nothing, so that reading the
settings never loads the SDK.
"""
