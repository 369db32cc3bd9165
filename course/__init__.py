"""The machinery that runs the course (model build, offline hub, servers, converters, terminal
chat).

Lessons import `helpers`; `helpers` never imports this package. See the README, "How the code is
laid out".
"""
