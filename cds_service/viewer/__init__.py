"""The card viewer: a development and demo page that calls the service the way an EHR does and shows its cards,
and a page over the feedback analytics. Plain JavaScript and CSS shipped in ``static/``; nothing from a CDN."""
