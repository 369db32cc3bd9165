"""The machinery that runs the course (model build, offline hub, servers, converters, terminal
chat).

Lessons import `helpers`; `helpers` never imports this package. See docs/code-layout.md.
"""
