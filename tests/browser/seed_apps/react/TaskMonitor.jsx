import React, { useState, useEffect, useCallback } from 'react';

function TaskMonitor() {
  const [ws, setWs] = useState(null);
  const [activeTasks, setActiveTasks] = useState([]);
  const [scheduledTasks, setScheduledTasks] = useState([]);
  const [notifications, setNotifications] = useState([]);

  const connectWebSocket = useCallback(() => {
    const websocket = new WebSocket('ws://localhost:8000/ws/tasks/');

    websocket.onopen = () => {
      console.log('WebSocket connected');
    };

    websocket.onmessage = (event) => {
      const message = JSON.parse(event.data);

      switch(message.type) {
        case 'task_started':
          setNotifications(prev => [{
            type: 'info',
            message: `任务开始: ${message.data.avid}`
          }, ...prev.slice(0, 19)]);
          break;

        case 'task_completed':
          setNotifications(prev => [{
            type: 'success',
            message: `任务完成: ${message.data.avid}`
          }, ...prev.slice(0, 19)]);
          break;

        case 'task_failed':
          setNotifications(prev => [{
            type: 'error',
            message: `任务失败: ${message.data.avid}`
          }, ...prev.slice(0, 19)]);
          break;

        case 'queue_status':
          setActiveTasks(message.data.active_tasks);
          setScheduledTasks(message.data.scheduled_tasks);
          break;
      }
    };

    websocket.onerror = (error) => {
      console.error('WebSocket error:', error);
    };

    websocket.onclose = () => {
      console.log('WebSocket closed, reconnecting in 5s...');
      setTimeout(connectWebSocket, 5000);
    };

    setWs(websocket);
  }, []);

  useEffect(() => {
    connectWebSocket();

    return () => {
      if (ws) {
        ws.close();
      }
    };
  }, [connectWebSocket]);

  return (
    <div className="task-monitor">
      <h2>任务队列状态</h2>

      <div className="active-tasks">
        <h3>正在执行 ({activeTasks.length})</h3>
        <ul>
          {activeTasks.map(task => (
            <li key={task.task_id}>{task.avid} - 正在下载...</li>
          ))}
        </ul>
      </div>

      <div className="waiting-tasks">
        <h3>等待中 ({scheduledTasks.length})</h3>
        <ul>
          {scheduledTasks.map(task => (
            <li key={task.task_id}>{task.avid}</li>
          ))}
        </ul>
      </div>

      <div className="notifications">
        <h3>最近通知</h3>
        <ul>
          {notifications.map((notif, index) => (
            <li key={index} className={notif.type}>
              {notif.message}
            </li>
          ))}
        </ul>
      </div>
    </div>
  );
}

export default TaskMonitor;
