"""Reports of what the lab did: flows hop by hop and pictures of the lab.

- :mod:`testbed.report.flows` - each flow's key packets across interfaces; HTML/Markdown.
- :mod:`testbed.report.diagram` - SVG of the lab and ladder diagrams of a flow (pure).
"""
