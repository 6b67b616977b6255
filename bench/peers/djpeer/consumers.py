"""The seed's consumer: every socket joins the group `tasks` and receives what
workers `group_send` to it, as `{"type", "data"}` text frames."""

import json

from channels.generic.websocket import AsyncWebsocketConsumer

GROUP = "tasks"
EMPTY_QUEUE = {"active_tasks": [], "scheduled_tasks": [], "reserved_tasks": []}


class TaskConsumer(AsyncWebsocketConsumer):
    async def connect(self):
        await self.channel_layer.group_add(GROUP, self.channel_name)
        await self.accept()

    async def disconnect(self, code):
        await self.channel_layer.group_discard(GROUP, self.channel_name)

    async def receive(self, text_data=None, bytes_data=None):
        try:
            action = json.loads(text_data or "").get("action")
        except (ValueError, AttributeError):
            return
        if action == "get_queue_status":
            await self.send(text_data=json.dumps({"type": "queue_status", "data": EMPTY_QUEUE}))

    async def relay(self, event):
        await self.send(text_data=json.dumps({"type": event["type"], "data": event["data"]}))

    # group_send({"type": T, "data": ...}) calls the method named T.
    task_started = task_completed = task_failed = task_progress = queue_status = relay
