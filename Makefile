# Shortcuts for the scripts in scripts/ (they do the work; see each script's header).
.PHONY: todo-demo todo-demo-status todo-demo-down todo-demo-test

# The TODO app (examples/todo): gateway + auth (Rust) + todos (Python) + activity (Go).
todo-demo:
	scripts/todo-demo.sh up

todo-demo-status:
	scripts/todo-demo.sh status

todo-demo-down:
	scripts/todo-demo.sh down

# End to end over HTTP: sign up, tokens, 401/403, rate limit, cache, admin view.
todo-demo-test:
	scripts/todo-demo.sh test
