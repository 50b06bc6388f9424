"""Head kinds as plug-ins: base (the interface), one module per kind
(softmax, tags, ordinal) and registry (the kinds a heads file may name)."""
