"""The tutorial as plain scripts, one per framework: what the end-to-end benchmark times as whole processes."""
